from setuptools import find_packages, setup

# The shipped weights live in the top-level data/ folder of the repository; they are installed
# as the package data folder ase_equivariant/data (found by ase_equivariant.models.data_path).
setup(
    packages=find_packages(include=["ase_equivariant", "ase_equivariant.*"]) + ["ase_equivariant.data"],
    package_dir={"ase_equivariant.data": "data"},
    package_data={"ase_equivariant.data": ["*.pt", "PROVENANCE", "structures/*"],
                  "ase_equivariant": ["*.c"], "ase_equivariant.nn": ["*.c"]},  # compiled on first use (compiled.py)
)
