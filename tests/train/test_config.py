"""``crocnet train --config FILE``: a bad file is refused naming the file, the key, the expected type and the value."""

import json

import pytest

from crocnet.train import train
from crocnet.train.config import TrainConfig, load_config_file


@pytest.mark.parametrize("name, text, message", [
    ("c.json", "null", "must hold a mapping of option names to values .*, got None"),
    ("c.json", "[1]", "must hold a mapping of option names to values .*, got \\[1\\]"),
    ("c.json", '{"epochs": "x"}', "epochs must be an integer, got 'x'"),
    ("c.json", '{"epochs": true}', "epochs must be an integer, got True"),
    ("c.json", '{"stage": "1"}', "stage must be an integer, got '1'"),
    ("c.json", '{"lr_milestones": "a"}', "lr_milestones must be a list of numbers, got 'a'"),
    ("c.json", '{"model": 3}', "model must be a string or null, got 3"),
    ("c.yaml", "lr: fast", "lr must be a number, got 'fast'"),
    ("c.json", '{"epochs": 1,}', "is not valid JSON"),
    ("c.yaml", "epochs: [1", "is not valid YAML"),
    ("c.json", '{"epoch": 1}', "unknown keys in .*: epoch; known: "),
])
def test_a_bad_config_file_is_refused_naming_file_key_expected_and_got(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        load_config_file(path)
    assert str(path) in str(caught.value)
    assert train.main(["--config", str(path)]) == 2  # a message, no traceback
    assert str(path) in capsys.readouterr().err


def test_a_good_config_file_keeps_its_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlr: 1e-4\nviews: SA\nfold: 1\nlr_milestones: [0.5]\ntarget_spacing: null\n")
    assert load_config_file(path) == {"epochs": 3, "lr": 1e-4, "views": "SA", "fold": 1, "lr_milestones": [0.5],
                                      "target_spacing": None}  # PyYAML reads 1e-4 as a string: taken as the number


@pytest.mark.parametrize("change, message", [
    ({"views": ("XX",)}, "--views must be LA and/or SA, got XX"),
    ({"views": ()}, "--views must be LA and/or SA, got none"),
    ({"stage": "1"}, "--stage must be 1 or 2, got '1'"),
    ({"lr": -1.0}, r"--lr must be a number >= 0 \(Adam's learning rate, e.g. 1e-4\), got -1.0"),
    ({"lr": float("nan")}, "--lr must be a number >= 0 .*, got nan"),
    ({"target_spacing": 0.0}, r"--target-spacing must be a finite number of mm > 0 .*, got 0.0"),
    ({"target_spacing": -3.0}, r"--target-spacing must be a finite number of mm > 0 .*, got -3.0"),
    ({"target_spacing": float("inf")}, r"--target-spacing must be a finite number of mm > 0 .*, got inf"),
])
def test_validate_refuses_views_and_stages_that_do_not_exist(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data=str(tmp_path), **change).validate()


def test_a_retired_key_of_an_older_run_config_is_ignored_with_a_warning(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"epochs": 3, "workers": 4}))
    with pytest.warns(UserWarning, match="ignoring 'workers': batches are indexed from tensors in memory"):
        assert load_config_file(path) == {"epochs": 3}
