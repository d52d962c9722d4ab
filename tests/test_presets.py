"""Model presets: the published dimensions give the published parameter counts, through the HF config parser."""

import json

import pytest

from drift_jax.lm import hf, presets

# Parameter counts as the model cards state them.
PUBLISHED = {"qwen2_5_0_5b": 0.49e9, "qwen2_5_1_5b": 1.54e9, "qwen2_5_3b": 3.09e9, "qwen2_5_7b": 7.62e9,
             "llama3_1_8b": 8.03e9}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_has_its_published_size(name):
    assert presets.config(name).num_params == pytest.approx(PUBLISHED[name], rel=0.01)


def test_from_config_reads_config_json_with_the_hf_parser(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(presets.PRESETS["llama3_1_8b"]))
    from_file = presets.from_config("", str(tmp_path), "float32", "bfloat16", "full")
    assert from_file == presets.config("llama3_1_8b", "float32").replace(dtype="bfloat16", remat="full")
    assert from_file.rope_scaling[0] == "llama3" and from_file.param_dtype == "float32"
    assert presets.config("qwen2_5_3b") == hf.config_from_hf(presets.PRESETS["qwen2_5_3b"])
    with pytest.raises(KeyError, match="presets: llama3_1_8b"):
        presets.config("qwen3")
