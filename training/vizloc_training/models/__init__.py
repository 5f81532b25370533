"""Neural-network building blocks of the trainers (torchvision backbones, heads)."""
