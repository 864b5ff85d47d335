"""The training program (train/train): fine-tunes Wav2Vec2 CTC under the SageMaker training contract."""
