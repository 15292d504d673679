import pydantic
import pytest
from pipeline_helpers import tiny_dict, write_yaml

from pipeline.config import ConfigError, eval_d, load_config, parse_config


def test_tiny_config_is_valid_and_frozen():
    cfg = parse_config(tiny_dict())
    assert cfg.seeds.init == [0, 1, 2]
    assert cfg.d_of(4, 1) == 5
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.name = "other"


def test_d_rules():
    assert eval_d("k + 4", 8, 2) == 6
    assert eval_d("max(2*k, 8)", 8, 6) == 12
    assert eval_d(7, 8, 2) == 7
    cfg = parse_config(tiny_dict(d="k + 3", grid=dict(k=[1, 2])))
    assert [cfg.d_of(4, k) for k in (1, 2)] == [4, 5]


def test_fingerprint_ignores_grid_and_resources_but_not_training():
    a = parse_config(tiny_dict())
    assert a.fingerprint() == parse_config(tiny_dict(grid=dict(m=[8]), resources=dict(num_cpus=2))).fingerprint()
    assert a.fingerprint() != parse_config(tiny_dict(training=dict(eps=1e-3))).fingerprint()


@pytest.mark.parametrize("overrides,field", [
    (dict(bogus=1), "bogus: unknown key"),
    (dict(grid=dict(m=[])), "grid.m"),
    (dict(grid=dict(m=["wide"])), "grid.m"),
    (dict(grid=dict(m=[0])), "grid.m"),
    (dict(grid=dict(n=[1])), "grid.n"),
    (dict(grid=dict(k=[5])), "d: k=5 must be < d=5"),
    (dict(grid=dict(delta=[0.0])), "grid.delta"),
    (dict(grid=dict(delta=[2.5])), "grid.delta"),
    (dict(grid=dict(n=[40], delta=[1.3]), d=3), "grid.delta: delta=1.3 is beyond"),
    (dict(seeds=dict(init=[-1, 2])), "seeds.init"),
    (dict(seeds=dict(data=[])), "seeds.data"),
    (dict(training=dict(step_factor=0)), "training.step_factor"),
    (dict(training=dict(eps=2.0)), "training.eps"),
    (dict(training=dict(dtype="float16")), "training.dtype"),
    (dict(training=dict(max_steps=-5)), "training.max_steps"),
    (dict(resources=dict(num_gpus=-1)), "resources.num_gpus"),
    (dict(d="k + x"), "d: "),
    (dict(name="has space"), "name"),
])
def test_bad_config_one_line_naming_field(overrides, field):
    with pytest.raises(ConfigError) as info:
        parse_config(tiny_dict(**overrides))
    msg = str(info.value)
    assert field in msg and "\n" not in msg


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML at line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)
    assert load_config(write_yaml(tmp_path / "ok.yaml", tiny_dict())).name == "tiny"
