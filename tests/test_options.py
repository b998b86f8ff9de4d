import pytest

from tf_switch.options import SwitchOptions


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dispatch": "sorted", "routing": "experts_choose"}, "tokens-choose"),
        ({"dispatch": "scatter"}, "dispatch"),
        ({"expert_parallel": True, "dispatch": "sorted"}, "equal-size"),
        ({"expert_parallel": True, "capacity_factor": None}, "capacity_factor="),
        ({"expert_parallel": True, "eval_capacity_factor": None}, "equal-size"),
    ],
)
def test_combinations_that_cannot_run_are_refused_with_what_to_set(changes, message):
    with pytest.raises(ValueError, match=message):
        SwitchOptions(**changes)


def test_serving_options_route_dropless_per_sequence_on_one_device():
    trained = SwitchOptions(
        group_size=1024, eval_capacity_factor=2.0, expert_parallel=True
    )
    served = trained.for_serving()
    assert served.eval_capacity_factor is None
    assert served.group_size is None and not served.expert_parallel
    assert served.capacity_factor == trained.capacity_factor  # training's kept
