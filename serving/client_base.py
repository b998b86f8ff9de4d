"""What `RestClient` and `GrpcClient` share: `ServingClientError`, inputs cast
to a signature's dtypes where that loses nothing, `predict`, `generate` and
`route` over each client's `_predict` and `metadata`, and `classify` over
each client's `_classify`."""

import base64

import numpy as np

DEFAULT_SIGNATURE = "serving_default"
# tf-switch classifier exports name their classify signature so.
CLASSIFY_SIGNATURE = "classify"

# DataType enum names -> numpy dtypes (the ones TF Serving's JSON handles).
NUMPY_DTYPES = {
    "DT_FLOAT": np.float32,
    "DT_DOUBLE": np.float64,
    "DT_INT8": np.int8,
    "DT_INT16": np.int16,
    "DT_INT32": np.int32,
    "DT_INT64": np.int64,
    "DT_UINT8": np.uint8,
    "DT_UINT16": np.uint16,
    "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64,
    "DT_BOOL": np.bool_,
    "DT_STRING": object,
}


class ServingClientError(Exception):
    """A server's error: `status` (HTTP status or gRPC code name), `message`."""

    def __init__(self, status, message):
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self):
        return f"{self.status}: {self.message}"


def to_bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _cast(value, dtype_name):
    """`value` as a numpy array of the signature's dtype, when that loses nothing."""
    array = np.asarray(value)
    target = NUMPY_DTYPES.get(dtype_name)
    if target is None:
        return array
    if target is object:
        if array.dtype.kind in "SUO":
            flat = [to_bytes(item) for item in array.reshape(-1)]
            out = np.empty(len(flat), dtype=object)
            out[:] = flat
            return out.reshape(array.shape)
        return array
    kind = np.dtype(target).kind
    if kind in "iu" and array.dtype.kind in "iu":
        return array.astype(target)
    if kind == "f" and array.dtype.kind in "iuf":
        return array.astype(target)
    if kind == "b" and array.dtype.kind == "b":
        return array
    return array  # Sent as is: the server gives the error.


def _signature(metadata, signature_name):
    signatures = metadata.get("metadata", {}).get("signature_def", {})
    return signatures.get("signature_def", {}).get(signature_name)


def _generate_inputs(prompts, max_new_tokens, temperature, top_k, top_p, seed):
    if isinstance(prompts, (str, bytes)):
        prompts = [prompts]
    prompts = list(prompts)
    size = len(prompts)
    prompt = np.empty(size, dtype=object)
    prompt[:] = [to_bytes(p) for p in prompts]
    return {
        "prompt": prompt,
        "max_new_tokens": np.full(size, max_new_tokens, np.int32),
        "temperature": np.full(size, temperature, np.float32),
        "top_k": np.full(size, top_k, np.int32),
        "top_p": np.full(size, top_p, np.float32),
        "seed": np.full(size, seed, np.int32),
    }


def _json_feature_value(value):
    """A feature element as TF Serving's JSON holds it: bytes as UTF-8 text
    or {"b64": ...}, numpy scalars as Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    return value


def json_example(features):
    """{feature: value or list of values} as the JSON object of a tf.Example
    (TF Serving types it: ints int64, floats float, strings bytes)."""
    example = {}
    for name, value in features.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            example[name] = [_json_feature_value(item) for item in value]
        else:
            example[name] = _json_feature_value(value)
    return example


def classification_arrays(results):
    """{"classes": <object>[N, C] bytes, "scores": <float32>[N, C]} of
    [[(label, score), ...], ...]."""
    num_classes = len(results[0]) if results else 0
    classes = np.empty((len(results), num_classes), dtype=object)
    scores = np.zeros((len(results), num_classes), dtype=np.float32)
    for row, pairs in enumerate(results):
        for column, (label, score) in enumerate(pairs):
            classes[row, column] = to_bytes(label)
            scores[row, column] = score
    return {"classes": classes, "scores": scores}


def _texts(array):
    return [
        item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
        for item in np.asarray(array).reshape(-1)
    ]


class BaseClient:
    """predict/generate/route over `_predict` and `metadata`."""

    model_name = "switch"
    _metadata_cache = None

    def _signature_info(self, signature_name):
        if self._metadata_cache is None:
            self._metadata_cache = self.metadata()
        return _signature(self._metadata_cache, signature_name)

    def _cast_inputs(self, inputs, signature_name):
        try:
            signature = self._signature_info(signature_name)
        except ServingClientError:
            signature = None  # Let the predict call report the error.
        specs = (signature or {}).get("inputs", {})
        return {
            name: _cast(value, specs.get(name, {}).get("dtype"))
            for name, value in inputs.items()
        }

    def predict(self, inputs, signature_name=DEFAULT_SIGNATURE):
        """{output name: numpy array} of one signature on `inputs`."""
        return self._predict(self._cast_inputs(inputs, signature_name), signature_name)

    def generate_outputs(
        self, prompts, max_new_tokens=32, temperature=0.8, top_k=0, top_p=1.0, seed=0
    ):
        """All `generate` outputs: `text`, `token_ids` (the new tokens, -1
        after each row's end) and, for a Switch model, `expert` (each new
        token's expert per Switch layer). One value of each option for every
        prompt; top_k 0 and top_p 1.0 are off, temperature 0 is greedy."""
        inputs = _generate_inputs(
            prompts, max_new_tokens, temperature, top_k, top_p, seed
        )
        return self.predict(inputs, "generate")

    def generate(
        self, prompts, max_new_tokens=32, temperature=0.8, top_k=0, top_p=1.0, seed=0
    ):
        """The texts (prompt and continuation) for each prompt."""
        outputs = self.generate_outputs(
            prompts, max_new_tokens, temperature, top_k, top_p, seed
        )
        return _texts(outputs["text"])

    def route(self, token_ids):
        """{"expert": int32 [batch, length, layers], "probability": float32 ...}."""
        return self.predict({"token_ids": token_ids}, "route")

    def classify(self, examples, context=None, signature_name=CLASSIFY_SIGNATURE):
        """TF Serving's Classify on tf.Examples.

        Args:
            examples: a list of {feature name: value or list of values}.
                Values are typed as TF Serving's REST API types JSON: ints
                (and bools) int64, floats float (write 1.0, not 1, for a
                float feature), str and bytes bytes.
            context: {feature: value} merged into every example (an
                example's own feature of the same name wins), or None.
            signature_name: a classify signature ("classify" in tf-switch
                classifier exports; "" for the model's "serving_default").

        Returns:
            {"classes": <object>[N, C] labels as bytes ("" when the
            signature has no `classes`), "scores": <float32>[N, C] (0 when
            it has no `scores`)}.
        """
        examples = [json_example(example) for example in examples]
        if context is not None:
            context = json_example(context)
        return self._classify(examples, context, signature_name)
