"""Training on stored features: the motion autoencoder's LightningModule and DataModules over feature stores."""
