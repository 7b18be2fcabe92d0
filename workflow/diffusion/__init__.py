"""The diffusion stage (config section ``diffusion``; rules/diffusion.smk): Stable Diffusion base models,
cached latents, fine-tuning (full UNet or LoRA), saving trained generators and sharded, seeded sampling. Rules
call :mod:`workflow.diffusion.stage`."""
