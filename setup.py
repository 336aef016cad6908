"""commerce-mtl: multi-task learning for e-commerce on TFX, a shared BERT encoder, and TF Serving."""
from pathlib import Path

from setuptools import setup


def _requirements() -> list[str]:
    lines = Path(__file__).with_name("requirements.txt").read_text().splitlines()
    return [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip() and line.strip() != "pytest"]


setup(
    name="commerce-mtl",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.11",
    packages=["pipeline", "models", "components", "serving"],
    install_requires=_requirements(),
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["commerce-mtl=pipeline.cli:main"]},
)
