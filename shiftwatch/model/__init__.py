"""The classifier (`model.network`) and what the monitors look at, computed once per image
(`model.features`)."""

# Where the pipeline keeps its two networks (stages train and finetune write them; dvc.yaml names
# the same paths as outputs and deps). Plain strings: importing them pulls in no torch.
DEPLOYED_MODEL = "models/resnet18.pt"
FINETUNED_MODEL = "models/resnet18_augmented.pt"
