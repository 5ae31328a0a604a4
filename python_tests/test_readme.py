"""README's "Use it with your model" examples run as they are, offline."""
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")

README = (Path(__file__).parent.parent / "README.md").read_text()
SECTION = README.split("## Use it with your model", 1)[1].split("\n## ", 1)[0]
EXAMPLES = re.findall(r"```python\n(.*?)```", SECTION, flags=re.S)


def test_the_section_has_its_three_examples():
    assert len(EXAMPLES) == 3
    assert "hf.generate" in EXAMPLES[0] and "sample.confidence" in EXAMPLES[1] and "TinyMDLM" in EXAMPLES[2]


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=["hugging_face", "llada_style", "mdlm"])
def test_example_runs(index, capsys):
    exec(compile(EXAMPLES[index], f"README example {index}", "exec"), {"__name__": "readme"})
    assert capsys.readouterr().out
