"""Packages: minimaskrcnn/ installs as minimaskrcnn, and kernels/ as minimaskrcnn.kernels.

kernels/ stays at the top of the repository (one folder per hot op) but must never install as a
top-level package named ``kernels``, a name another project owns.
"""
from setuptools import find_packages, setup

packages = ["minimaskrcnn"] + [
    f"minimaskrcnn.{p}" for p in find_packages("minimaskrcnn", exclude=["data.sample", "data.sample.*"])
]
packages += ["minimaskrcnn.kernels"] + [f"minimaskrcnn.kernels.{p}" for p in find_packages("kernels")]

setup(
    packages=packages,
    package_dir={"minimaskrcnn": "minimaskrcnn", "minimaskrcnn.kernels": "kernels"},
)
