"""Config validation: every mistake gets one message naming the key, the value and the fix."""

import pytest

from dbnet import config as c
from dbnet.errors import ConfigError


def load_text(tmp_path, text, overrides=()):
    p = tmp_path / "cfg.toml"
    p.write_text(text)
    return c.load(p, list(overrides))


def test_defaults_round_trip_through_toml():
    cfg = c.Config()
    assert c.from_toml_text(c.to_toml(cfg)) == cfg


def test_full_config_and_overrides(tmp_path):
    cfg = load_text(tmp_path, '[model]\nhidden = [64, 32]\n[train]\nmax_steps = 10\n',
                    ["optimizer.lr=0.5", "run.name=abc", "train.batch_size=32", "optimizer.rule=adagrad"])
    assert cfg.model.hidden == (64, 32) and cfg.optimizer.lr == 0.5 and cfg.run.name == "abc"
    assert cfg.train.batch_size == 32 and cfg.train.max_steps == 10 and cfg.optimizer.rule == "adagrad"
    assert isinstance(cfg.train.max_epochs, float)


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        ("[train]\nlrate = 1\nmax_steps = 1", (), "unknown key train.lrate; valid keys in [train]: algorithm, batch_size"),
        ("[trian]\nx = 1", (), "unknown section [trian]; valid sections: run, data, model, optimizer, train"),
        ("[train]\nbatch_size = -3\nmax_steps = 1", (), "train.batch_size = -3: must be > 0"),
        ("[train]\nbatch_size = 2.5\nmax_steps = 1", (), "train.batch_size = 2.5: expected an integer"),
        ("[model]\nhidden = [1, \"a\"]", (), "model.hidden[1] = 'a': expected an integer"),
        ("[model]\nactivation = \"swish\"", (), "model.activation = 'swish': must be one of 'sigmoid', 'tanh', 'relu'"),
        ("[train]\nbatch_size = 8", (), "no stopping limit: set at least one of train.max_steps"),
        ("[optimizer]\nlr = nan", (), "optimizer.lr = nan: expected a finite number"),
        ("", ["train.nope=1"], "unknown key train.nope"),
        ("", ["bogus"], "expected section.key=value"),
        ("", ["x.y=1"], "unknown section [x]"),
        ("model = 3", (), "[model] must be a table"),
        ("[train\n", (), "not valid TOML"),
    ],
)
def test_bad_configs_get_one_clear_message(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text, overrides)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        c.load("/nonexistent/x.toml")


def test_config_objects_are_frozen():
    cfg = c.Config()
    with pytest.raises(AttributeError):
        cfg.train.batch_size = 3


def test_launch_print_ranks_asks_the_registry(capsys):
    """Batch scripts size their allocation with `dbnet launch --print-ranks CONFIG` (no MPI started)."""
    from pathlib import Path

    from dbnet.cli import main

    cfg = Path(__file__).resolve().parents[1] / "experiments" / "fashion_downpour.toml"
    assert main(["launch", "--print-ranks", str(cfg), "--set", "topology.replicas=6"]) == 0
    assert capsys.readouterr().out.strip() == "8"  # 2 shards + 6 replicas


def test_moved_keys_say_where_they_went(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[train]\nmax_steps = 1\n[downpour]\noverlap = false\n")
    with pytest.raises(ConfigError, match=r"downpour.overlap has moved to comm.overlap"):
        c.load(p)
