"""Package metadata for tf-switch."""

from setuptools import find_packages, setup

setup(
    name="tf-switch",
    version="0.1.0",
    description="The Switch Transformer (sparse Mixture-of-Experts) as Keras 3 "
    "layers on TensorFlow.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["tf_switch", "tf_switch.*", "training", "serving"]),
    python_requires=">=3.10,<3.13",
    install_requires=[
        "tensorflow~=2.20.0",
        "keras>=3.10",
        "tensorflow-text~=2.20.0",
        "tensorflow-serving-api~=2.20.0",
        "numpy",
        "matplotlib",  # the training job's plots
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-xdist",
            "hypothesis>=6",
            "ruff",
            # CI executes the Colab notebooks on CPU.
            "papermill>=2.6",
            "ipykernel",
        ],
        # The peer we benchmark against: TF Model Garden's MoeLayer.
        "bench": ["tf-models-official==2.20.0"],
    },
    entry_points={
        "console_scripts": [
            "tf-switch-train = training.train:main",
            "tf-switch-export = serving.export:main",
            "tf-switch-server = serving.server:main",
            "tf-switch-grpc-server = serving.grpc_server:main",
            "tf-switch-client = serving.client:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
