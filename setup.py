"""mmntp_jax: multimodal next-token prediction pretraining in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="mmntp_jax",
    version="0.1.0",
    description="JAX/Flax pretraining stack for multimodal next-token prediction",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["mmntp_jax", "mmntp_jax.*"]),
    install_requires=[
        "jax>=0.10.0,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorstore>=0.1.86,<0.2",
        "numpy>=2.0,<3",
        "tqdm>=4.66,<5",
        "tensorboardX>=2.6,<3",
        "safetensors>=0.6,<1",
        "tokenizers>=0.22,<0.24",
        "array_record>=0.8,<0.9",
        "pillow>=10,<14",
        "pyarrow>=18",
        "matplotlib>=3.8,<4",
        "scipy>=1.13,<2",
        "flatbuffers>=24.3,<26",  # jax.export serialization (mmntp export stablehlo)
    ],
    extras_require={
        "dev": ["pytest>=8", "pytest-xdist>=3.5,<4", "hypothesis>=6.100", "scikit-image>=0.24"],
        "hf": ["torch==2.13.0", "transformers>=4.50", "vector-quantize-pytorch>=1.20"],
    },
    entry_points={"console_scripts": ["mmntp=mmntp_jax.cli:main"]},
)
