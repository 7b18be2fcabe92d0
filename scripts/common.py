"""Entry point of the rule every stage shares (rules/common.smk): building a tiny stand-in model with
workflow.common.tiny_models.build_tiny_model."""

from workflow.common.cli import Arg, command, main

COMMANDS = [
    command(
        "build_tiny_model",
        "a tiny randomly initialised stand-in for a pretrained model (demo, tests)",
        "--name",
        Arg("--seed", int),
        "--out",
    ),
]

if __name__ == "__main__":
    main("workflow.common.tiny_models", __doc__, COMMANDS)
