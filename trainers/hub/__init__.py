"""The Hugging Face Hub: pushing and loading checkpoints (`push`) and the model card (`model_card`, rendered
from `templates/`)."""
