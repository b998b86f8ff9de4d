import keras

from tf_switch import SwitchFFN
from training.progress import ConciseProgbar, concise_logs

LOGS = {
    "loss": 2.0,
    "perplexity": 7.4,
    "a/max_load": 1.3,
    "a/dropped_fraction": 0.1,
    "a/load_balance_loss": 1.01,
    "a/expert_0_fraction": 0.2,
    "b/max_load": 1.1,
    "b/dropped_fraction": 0.0,
    "val_loss": 2.1,
    "val_a/max_load": 1.2,
}


def test_shows_load_everywhere_and_drops_where_capacity_applies():
    assert concise_logs(LOGS, dropless_routers={"b"}) == {
        "loss": 2.0,
        "perplexity": 7.4,
        "a/max_load": 1.3,
        "a/dropped_fraction": 0.1,
        "b/max_load": 1.1,
        "val_loss": 2.1,
    }


def test_progress_bar_finds_the_dropless_routers_of_a_model():
    inputs = keras.Input((8, 4))
    dropless = SwitchFFN(2, 8, capacity_factor=None, name="d")
    capped = SwitchFFN(2, 8, name="c")
    model = keras.Model(inputs, capped(dropless(inputs)))
    progress = ConciseProgbar()
    progress.set_model(model)
    assert progress.dropless_routers == {"d_router"}
