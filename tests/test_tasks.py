"""Task presets carry the published settings; overrides change them and typos fail loudly."""

import pytest

from dipcore import nets
from dipcore.errors import ConfigError
from dipcore.tasks import TASKS, VARIANTS, apply_overrides, get_preset


def _params(p):
    net = nets.get_net(p.net, in_channels=p.input_depth, out_channels=3, **p.net_options)
    return sum(q.numel() for q in net.parameters())


def test_sr_presets_follow_the_published_code():
    x4, x8 = get_preset("sr", scale=4), get_preset("sr", scale=8)
    assert (x4.iterations, x4.reg_noise_std, x4.lr, x4.input_depth) == (2000, 0.03, 0.01, 32)
    assert (x8.iterations, x8.reg_noise_std, x8.scale) == (4000, 0.05, 8)
    assert _params(x4) == 2_217_831  # the paper's default hourglass


def test_denoising_preset_averages_outputs_and_backtracks():
    p = get_preset("denoise")
    assert p.ema == 0.99 and p.output == "average" and p.backtrack
    assert p.reg_noise_std == pytest.approx(1 / 30) and p.iterations == 1800
    assert get_preset("denoise", sigma=50).reg_noise_std == pytest.approx(1 / 20)


def test_inpainting_variants_have_their_own_nets_and_schedules():
    random, text, large, region = (get_preset("inpaint", variant=v) for v in VARIANTS["inpaint"])
    assert (random.lr, random.iterations, random.drop) == (0.001, 11000, 0.5)
    assert text.net_options["channels_skip"] == (128,) * 5 and text.net_options["upsample"] == "nearest"
    assert large.input == "meshgrid" and large.input_depth == 2 and large.net_options["channels_skip"] == (0,) * 5
    assert len(region.net_options["channels_down"]) == 6 and region.net_options["filter_size_down"] == 5
    assert region.reg_noise_std == 0 and region.input_depth == 1


def test_other_tasks():
    jpeg, flash, pre = get_preset("jpeg"), get_preset("flash_noflash"), get_preset("preimage")
    assert jpeg.input_depth == 3 and jpeg.net_options["channels_skip"] == (0, 0, 0, 4, 4) and jpeg.iterations == 2400
    assert flash.input == "guide" and flash.lr == 0.1 and flash.iterations == 601
    assert pre.layer == "fc6" and pre.net_options["downsample"] == "avg" and pre.net_options["pad"] == "zero"


@pytest.mark.parametrize("task", TASKS)
def test_every_preset_builds_its_net_and_the_fast_one_is_narrower(task):
    paper, fast = get_preset(task), get_preset(task, preset="fast")
    assert _params(fast) < _params(paper)
    assert fast.iterations < paper.iterations
    # Its short count returns the moving average where the CPU preset study measured it above the last iterate
    # (SR, inpainting: docs/results.md); denoising and JPEG average in their paper presets already.
    averaged = fast.output == "average" and fast.ema == 0.99
    assert averaged == (task in ("sr", "inpaint", "denoise", "jpeg"))


def test_overrides_change_width_and_fields_and_reject_typos():
    p = apply_overrides(get_preset("sr"), channels=16, lr=0.02, iterations=7)
    assert p.net_options["channels_down"] == (16,) * 5 and p.net_options["channels_skip"] == (4,) * 5
    assert (p.lr, p.iterations) == (0.02, 7)
    with pytest.raises(ConfigError, match="unknown setting 'chanels'"):
        apply_overrides(get_preset("sr"), chanels=16)
    resnet = apply_overrides(get_preset("denoise"), channels=8, net="resnet")
    assert resnet.net == "resnet" and resnet.net_options == {"channels": 8}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "deblur"}, "unknown task"),
        ({"task": "inpaint", "variant": "holes"}, "no variant"),
        ({"task": "denoise", "scale": 4}, "only applies"),
        ({"task": "sr", "scale": 1}, "scale ≥ 2"),
        ({"task": "sr", "preset": "slow"}, "unknown preset"),
    ],
)
def test_bad_presets_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        get_preset(**kwargs)
