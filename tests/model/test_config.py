import dataclasses
import json

import pytest

from rxt_dist.model import (
    PRESETS,
    AttentionConfig,
    FFNConfig,
    GateConfig,
    MemoryAttentionConfig,
    RxTConfig,
    STMConfig,
    build_model,
    config_from_dict,
    count_parameters,
    from_name,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_count_matches_stated_size(name):
    preset = PRESETS[name]
    total, active = count_parameters(build_model(preset.build()))
    assert abs(total - preset.stated_params) / preset.stated_params < 0.05, (name, total)
    assert active <= total


def test_nano_matches_rxt_alpha_nano_shape():
    cfg = from_name("nano")
    assert cfg.stm_shape == (6, 256, 128)
    assert cfg.decoder_ffn.kind == "moe"
    total, active = count_parameters(build_model(cfg))
    assert active < total  # only top-k experts are active per token


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_round_trips_through_json(name):
    cfg = from_name(name)
    again = config_from_dict(json.loads(cfg.to_json()))
    assert again == cfg


@pytest.mark.parametrize(
    "build, words",
    [
        (lambda: STMConfig(num_slots=0), ["num_slots=0", "≥ 1"]),
        (lambda: AttentionConfig(num_heads=4, num_query_heads=8), ["num_query_heads=8", "num_heads=4"]),
        (lambda: AttentionConfig(num_heads=4, num_kv_heads=3), ["num_kv_heads=3", "divide"]),
        (lambda: FFNConfig(kind="moe", num_experts=1), ["num_experts=1", "≥ 2"]),
        (lambda: FFNConfig(kind="moe", num_experts=4, top_k=5), ["top_k=5"]),
        (lambda: GateConfig(kind="sigmoidal"), ["kind='sigmoidal'", "static"]),
        (lambda: MemoryAttentionConfig(variant="cross"), ["variant='cross'", "interlayer"]),
        (lambda: RxTConfig(dim=100, decoder_attention=AttentionConfig(num_heads=3)),
         ["decoder_attention.num_heads=3", "dim=100"]),
        (lambda: RxTConfig(vocab_size=5), ["vocab_size=5", "special"]),
        (lambda: RxTConfig(encoder_ffn=FFNConfig(kind="moe", num_experts=2)), ["encoder_ffn.kind"]),
    ],
)
def test_bad_config_names_field_and_value(build, words):
    with pytest.raises(ValueError) as err:
        build()
    for word in words:
        assert word in str(err.value)


def test_unknown_field_in_config_dict_is_named():
    data = from_name("debug").to_dict()
    data["stm"]["slots"] = 4
    with pytest.raises(ValueError, match=r"RxTConfig\.stm: unknown field\(s\) \['slots'\]"):
        config_from_dict(data)


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="preset='huge'.*tiny"):
        from_name("huge")


def test_unknown_model_type():
    with pytest.raises(ValueError, match="model_type='gpt'"):
        config_from_dict({"model_type": "gpt"})


def test_sqa_uses_fewer_query_heads_and_fewer_parameters():
    mha = dataclasses.replace(from_name("debug"), encoder_attention=AttentionConfig(num_heads=4))
    sqa = dataclasses.replace(mha, encoder_attention=AttentionConfig(num_heads=4, num_query_heads=2))
    m_mha, m_sqa = build_model(mha), build_model(sqa)
    assert m_sqa.encoder[0].attn.q_proj.out_features == m_mha.encoder[0].attn.q_proj.out_features // 2
    assert count_parameters(m_sqa)[0] < count_parameters(m_mha)[0]
