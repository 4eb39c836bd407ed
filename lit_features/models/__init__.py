"""Plain nn.Modules that Hugging Face does not provide: motion autoencoder, lip ResNet-18, VideoMAEv2, video ViT."""
