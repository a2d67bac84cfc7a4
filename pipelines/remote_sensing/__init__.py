"""Remote sensing: SatMAE++ (pretrain + finetune) and ChannelViT on multi-band GeoTIFFs."""
