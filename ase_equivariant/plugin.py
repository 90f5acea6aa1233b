"""ASE plugin registration: lets ``ase._4.plugins`` find :class:`EquivariantCalculator` by name.

Registered as the ``ase.plugins`` entry point of this package; ASE versions without the plugin
system see an empty set.
"""
try:
    from ase._4.plugins.plugin import CalculatorPlugin
except ImportError:  # ASE without the plugin system
    __ase_plugins__ = set()
else:
    __ase_plugins__ = {
        CalculatorPlugin(
            name="ase_equivariant",
            citation=(
                "Park et al., J. Chem. Theory Comput. 20, 4857 (2024) (SevenNet); "
                "Batzner et al., Nat. Commun. 13, 2453 (2022) (NequIP)"
            ),
            implementation="ase_equivariant.calculator.EquivariantCalculator",
        )
    }
