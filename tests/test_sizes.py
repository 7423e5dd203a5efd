"""One output-size grammar for the command line and the app (`flowsr_lp.sizes`)."""
import argparse

import pytest

from flowsr_lp import cli_options, sizes
from flowsr_lp.app import service
from flowsr_lp.errors import UsageError

GOOD = {"512x768": (512, 768), " 512 X 768 ": (512, 768), "3,4": (3, 4), "10*20": (10, 20), "1x1": (1, 1)}
BAD = ["0x5", "5x", "axb", "512 by 768", "5x5x5", "-3x4", "2.5x4", ""]


@pytest.mark.parametrize("text", sorted(GOOD))
def test_the_cli_and_the_app_read_a_size_alike(text):
    assert sizes.parse_size(text) == cli_options.parse_size(text) == service.parse_size(text) == GOOD[text]


@pytest.mark.parametrize("text", BAD)
def test_the_cli_and_the_app_refuse_the_same_sizes(text):
    with pytest.raises(UsageError, match="expected HEIGHTxWIDTH in pixels") as library:
        sizes.parse_size(text)
    with pytest.raises(argparse.ArgumentTypeError) as cli:
        cli_options.parse_size(text)
    assert str(cli.value) == str(library.value)
    if text:  # the app's empty box means "use the scale"
        with pytest.raises(UsageError, match="expected HEIGHTxWIDTH"):
            service.parse_size(text)
    else:
        assert service.parse_size(text) is None


def test_the_limit_unit_is_the_megapixel():
    assert sizes.megapixels((2000, 3000)) == 6.0
