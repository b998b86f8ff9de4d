"""The README's usage example runs as written."""

import pathlib
import re

import keras


def test_readme_usage_example_builds_and_compiles():
    readme = pathlib.Path(__file__).parents[1] / "README.md"
    usage = readme.read_text().split("## Usage", 1)[1]
    example = re.search(r"```python\n(.*?)```", usage, re.DOTALL).group(1)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    model = namespace["model"]
    assert isinstance(model, keras.Model) and model.compiled
    assert model.output.dtype == "float32"
