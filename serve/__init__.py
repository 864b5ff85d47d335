"""The serving program: Flask under gunicorn, /ping and /invocations for Wav2Vec2 CTC models."""
