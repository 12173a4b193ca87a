"""Forward hooks capture the documented output for every mapping form."""

import pytest
import torch

from _support.torch_models import SEQ, VOCAB
from nas_distill.distill.mappings import parse_layer_mapping
from nas_distill.distill.torch.hooks import OutputCapture
from nas_distill.errors import InvalidArchitecture


@pytest.fixture(scope="module")
def run(bert_teacher):
    model = bert_teacher
    ids = torch.randint(1, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))

    def capture(item, side="student"):
        m = parse_layer_mapping(item)
        student = side == "student"
        layer, output = (m.student_layer, m.student_output) if student else (m.teacher_layer, m.teacher_output)
        with OutputCapture(model, [layer]) as cap, torch.no_grad():
            ref = model(input_ids=ids, output_hidden_states=True)
            return cap.get(layer, output), ref

    return capture


def test_one_element(run):
    got, ref = run(("bert.encoder.layer.0",))
    assert torch.equal(got, ref.hidden_states[1])


@pytest.mark.parametrize("output", [0, "0"])
def test_name_and_index(run, output):
    got, ref = run(("bert", output))  # BertModel returns a ModelOutput; index 0 = last_hidden_state
    assert torch.equal(got, ref.hidden_states[-1])


def test_name_and_index_one(run):
    got, ref = run(("bert", 1))
    assert got.shape == (2, 48)  # pooler_output


def test_name_and_model_output_key(run):
    got, ref = run(("bert", "last_hidden_state"))
    assert torch.equal(got, ref.hidden_states[-1])
    got, ref = run(("classifier",))
    assert torch.equal(got, ref.logits)


def test_student_teacher_names(run):
    item = ("bert.encoder.layer.0", "bert.encoder.layer.1")
    s, ref = run(item, "student")
    t, _ = run(item, "teacher")
    assert torch.equal(s, ref.hidden_states[1]) and torch.equal(t, ref.hidden_states[2])


def test_four_elements(run):
    item = ("bert", "pooler_output", "bert", "0")
    s, ref = run(item, "student")
    t, _ = run(item, "teacher")
    assert s.shape == (2, 48) and torch.equal(t, ref.hidden_states[-1])


def test_nested(run):
    item = [("bert.encoder.layer.1",), ("bert", "last_hidden_state")]
    s, ref = run(item, "student")
    t, _ = run(item, "teacher")
    assert torch.equal(s, ref.hidden_states[2]) and torch.equal(t, ref.hidden_states[-1])


def test_missing_module_is_invalid_architecture(bert_teacher):
    with pytest.raises(InvalidArchitecture, match="bert.encoder.layer.7"):
        OutputCapture(bert_teacher, ["bert.encoder.layer.7"], "student")


def test_hooks_removed(bert_teacher):
    hooks = bert_teacher.bert.encoder.layer[0]._forward_hooks
    before = len(hooks)  # transformers installs its own output-capturing hooks
    cap = OutputCapture(bert_teacher, ["bert.encoder.layer.0"])
    assert len(hooks) == before + 1
    cap.remove()
    assert len(hooks) == before
