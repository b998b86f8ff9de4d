"""Parameters and FLOPs per token of a config and its dense twin.

Counted analytically, so the report for Switch-Base-128 (billions of
parameters) needs no memory; tests check the counts against
`model.count_params()` of built models.
"""


def parameter_and_flop_counts(config):
    """Counts for a `ModelConfig`'s language model.

    FLOPs are forward, per token, 2 per multiply-add, with attention over the
    full `sequence_length`; a Switch FFN costs `top_k` experts plus the router
    and its shared expert, if any (capacity padding not counted).

    Returns:
        dict with `parameters`, `expert_parameters`, `parameters_per_expert`,
        `sparse_layers` and `flops_per_token`.
    """
    d, f = config.hidden_dim, config.intermediate_dim
    ffn_in = 2 if config.activation == "gated-gelu" else 1
    ffn_parameters = (ffn_in + 1) * d * f
    ffn_flops = 2 * ffn_parameters
    attention_parameters = 4 * d * d + 4 * d  # q, k, v, output kernels and biases
    attention_flops = 2 * 4 * d * d + 2 * 2 * config.sequence_length * d
    top_k = config.switch_options.top_k
    shared_dim = config.switch_options.shared_expert_dim
    shared_parameters = (ffn_in + 1) * d * shared_dim if shared_dim else 0
    if config.switch_options.shared_expert_gate:
        shared_parameters += d

    parameters = config.vocab_size * d + config.sequence_length * d + 2 * d
    if not config.tie_embeddings:
        parameters += d * config.vocab_size
    flops = 2 * d * config.vocab_size
    expert_parameters = 0
    sparse_layers = 0
    for index in range(config.num_layers):
        parameters += attention_parameters + 4 * d  # and two LayerNorms
        flops += attention_flops
        if config.is_sparse(index):
            sparse_layers += 1
            experts = config.num_experts * ffn_parameters
            expert_parameters += experts
            parameters += experts + d * config.num_experts + shared_parameters
            flops += top_k * ffn_flops + 2 * d * config.num_experts
            flops += 2 * shared_parameters
        else:
            parameters += ffn_parameters
            flops += ffn_flops
    return {
        "parameters": parameters,
        "expert_parameters": expert_parameters,
        "parameters_per_expert": ffn_parameters if sparse_layers else 0,
        "sparse_layers": sparse_layers,
        "flops_per_token": flops,
    }


def _human(number):
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{unit}"
    return str(number)


def model_report(config):
    """A short text: the model against its dense twin ("8x parameters, same
    FLOPs").

    Example:

    >>> from tf_switch.models import get_preset
    >>> print(model_report(get_preset("switch-base-8")).splitlines()[0])
    model                    parameters   FLOPs/token   experts
    """
    sparse = parameter_and_flop_counts(config)
    dense = parameter_and_flop_counts(config.dense_twin())
    experts = (
        f"{config.num_experts} x {_human(sparse['parameters_per_expert'])} "
        f"in {sparse['sparse_layers']} layers"
        if sparse["sparse_layers"]
        else "-"
    )
    lines = [
        f"{'model':<24} {'parameters':>10} {'FLOPs/token':>13}   experts",
        f"{'switch':<24} {_human(sparse['parameters']):>10} "
        f"{_human(sparse['flops_per_token']):>13}   {experts}",
        f"{'dense twin':<24} {_human(dense['parameters']):>10} "
        f"{_human(dense['flops_per_token']):>13}   -",
        f"switch / dense: {sparse['parameters'] / dense['parameters']:.2f}x "
        f"parameters, {sparse['flops_per_token'] / dense['flops_per_token']:.3f}x "
        "FLOPs per token",
    ]
    return "\n".join(lines)
