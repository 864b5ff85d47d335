"""Launch the training and serving images on Amazon SageMaker with the SageMaker Python SDK v3 (its own environment, .venv-launch).

`launcher/launch {prepare,train,deploy,invoke,delete,transform} --help`; every command also runs in the
SDK's local mode (`--local`), which starts the same images with docker compose on this machine.
"""
