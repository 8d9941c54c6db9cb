"""Item encoders: text (BERT-family [CLS]) and image (pretrained CNN), each reduced by PCA to d."""
