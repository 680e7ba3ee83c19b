# Kept for tools that still look for it; all metadata lives in setup.cfg.
from setuptools import setup

setup()
