"""The generated tables of the docs are exactly what their generators print (moved here from the tests that
compared README with them). A missing or renamed heading fails: docs_helpers.section raises."""
from __future__ import annotations

from docs_helpers import DOCS, section, table_lines


def test_hyperparameters_table_is_the_generated_one():
    from train import hyperparameters as H

    assert H.markdown_table() in section(DOCS / "hyperparameters.md", "## Hyperparameters"), \
        "paste train.hyperparameters.markdown_table() into docs/hyperparameters.md"


def test_serving_settings_table_is_the_generated_one():
    from serve.settings import markdown_table

    assert table_lines(section(DOCS / "settings.md", "## Serving settings")) == markdown_table(), \
        "paste serve.settings.markdown_table() into docs/settings.md, section Serving settings"


def test_request_options_table_is_the_generated_one():
    from serve import options

    assert table_lines(section(DOCS / "requests.md", "## Request options")) == options.markdown_table(), \
        "paste serve.options.markdown_table() into docs/requests.md, section Request options"


def test_layouts_list_is_the_generated_one():
    from train import formats

    assert formats.markdown() in section(DOCS / "training-data.md", "### Channels and data formats"), \
        "paste train.formats.markdown() into docs/training-data.md, section Channels and data formats"


def test_a_renamed_heading_fails_instead_of_skipping(tmp_path):
    import pytest

    page = tmp_path / "page.md"
    page.write_text("# Page\n\n## Serving settings (renamed)\n\n| a |\n")
    with pytest.raises(AssertionError, match="no heading '## Serving settings'"):
        section(page, "## Serving settings")
