"""Package metadata for tf-switch.

`pip install tf-switch` installs the layers (`tf_switch`) with their own
dependencies only: TensorFlow, Keras and NumPy. The rest are extras:

    pip install "tf-switch[text]"    # tf_switch.text and .export: tensorflow-text
    pip install "tf-switch[train]"   # the training job, tf_switch_training
    pip install "tf-switch[serve]"   # the servers and clients, tf_switch_serving
    pip install "tf-switch[all]"     # all of the above

The repository's `training/` and `serving/` folders install as the packages
`tf_switch_training` and `tf_switch_serving`, names that cannot collide with
other projects' top-level `training` or `serving`. In a checkout, `python -m
training.train` keeps working; installed, use `python -m
tf_switch_training.train` or the console scripts.
"""

from setuptools import find_packages, setup

# The Keras releases the private-API shims in tf_switch/keras_internals.py are
# tested against: CI runs tests/test_keras_internals.py on both bounds.
KERAS = "keras>=3.13,<3.16"

TEXT = ["tensorflow-text~=2.20.0"]
TRAIN = [*TEXT, "matplotlib"]
SERVE = [*TEXT, "tensorflow-serving-api~=2.20.0"]

setup(
    name="tf-switch",
    version="0.2.0",
    description="The Switch Transformer (sparse Mixture-of-Experts) as Keras 3 "
    "layers on TensorFlow.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=[
        *find_packages(include=["tf_switch", "tf_switch.*"]),
        "tf_switch_training",
        "tf_switch_serving",
    ],
    package_dir={"tf_switch_training": "training", "tf_switch_serving": "serving"},
    package_data={"tf_switch_serving": ["config/*"]},
    python_requires=">=3.10,<3.13",
    install_requires=["tensorflow~=2.20.0", KERAS, "numpy"],
    extras_require={
        "text": TEXT,
        "train": TRAIN,
        "serve": SERVE,
        "all": sorted({*TRAIN, *SERVE}),
        "dev": [
            *sorted({*TRAIN, *SERVE}),
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
            "tf-switch-train = tf_switch_training.train:main",
            "tf-switch-prune = tf_switch_training.prune:main",
            "tf-switch-classify = tf_switch_training.classify:main",
            "tf-switch-export = tf_switch_serving.export:main",
            "tf-switch-server = tf_switch_serving.server:main",
            "tf-switch-grpc-server = tf_switch_serving.grpc_server:main",
            "tf-switch-client = tf_switch_serving.client:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
