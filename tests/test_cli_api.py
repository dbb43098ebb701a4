"""Each `cifarlab` command is one call of the Python facade: the command prints what the call returns,
and refuses bad arguments with the very line the call raises (cheap cases: nothing is trained or loaded)."""
import pytest

import cifarlab
from cifarlab.cli import main
from cifarlab.errors import UserError


def test_show_and_summary_print_what_the_facade_returns(capsys):
    assert main(["show", "smoke", "--diff"]) == 0
    assert capsys.readouterr().out == cifarlab.config_yaml("smoke", diff=True)
    settings = ["data.dataset=fashion_mnist", "model.options.width=4"]
    assert main(["summary", "convnet", *settings]) == 0
    assert capsys.readouterr().out == cifarlab.model_summary("convnet", settings) + "\n"
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(cifarlab.list_recipes())


def test_the_facade_refuses_bad_arguments_with_the_commands_own_line(tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"  # never read: every refusal below comes first
    cases = [
        (lambda: cifarlab.gradcam(checkpoint, count=0), ["gradcam", str(checkpoint), "--count", "0"]),
        (lambda: cifarlab.gradcam(checkpoint, images="1,,2"), ["gradcam", str(checkpoint), "--images", "1,,2"]),
        (lambda: cifarlab.predict_files(checkpoint, [tmp_path], top=0),
         ["predict", str(checkpoint), str(tmp_path), "--top", "0"]),
        (lambda: cifarlab.export_checkpoint(checkpoint, "hf", tta="flip"),
         ["export", str(checkpoint), "--format", "hf", "--tta", "flip"]),
        (lambda: cifarlab.sweep_recipe("smoke", ["a.yaml", "b.yaml"]), ["sweep", "smoke", "a.yaml", "b.yaml"]),
        (lambda: cifarlab.compare([tmp_path / "none"], out=tmp_path / "cmp"),
         ["compare", str(tmp_path / "none"), "--out", str(tmp_path / "cmp")]),
        (lambda: cifarlab.report(tmp_path), ["report", str(tmp_path)]),
        (lambda: cifarlab.model_summary("convnet", ["optim.lr=0.1"]), ["summary", "convnet", "optim.lr=0.1"]),
    ]
    for call, argv in cases:
        with pytest.raises(UserError) as raised:
            call()
        assert main(argv) == 2, argv
        assert capsys.readouterr().err == f"cifarlab {argv[0]}: error: {raised.value}\n", argv
    assert not any(tmp_path.iterdir())  # nothing was written by a refused call


@pytest.mark.parametrize("argv, attribute, expected", [
    (["sweep", "smoke", "--trials", "2", "space.yaml", "optim.lr=0.1"], "args", ["space.yaml", "optim.lr=0.1"]),
    (["sweep", "smoke", "space.yaml", "--trials", "2", "seed=1"], "args", ["space.yaml", "seed=1"]),
    (["train", "smoke", "--run-dir", "runs/job-7", "train.epochs=1"], "overrides", ["train.epochs=1"]),
])
def test_words_after_an_option_still_belong_to_the_command(argv, attribute, expected):
    """A space file or an override written after an option is taken, in the order written."""
    from cifarlab.cli import parse

    assert getattr(parse(argv), attribute) == expected


def test_a_word_after_an_option_that_is_not_the_commands_is_the_usual_error(capsys):
    from cifarlab.cli import parse

    with pytest.raises(SystemExit) as stopped:
        parse(["train", "smoke", "--run-dir", "runs/job-7", "space.yaml"])  # train takes no files
    assert stopped.value.code == 2 and "unrecognized arguments: space.yaml" in capsys.readouterr().err
