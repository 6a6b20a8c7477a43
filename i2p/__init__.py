"""i2p: 3D point-cloud representations distilled from frozen 2D models (I2P-MAE), as an
offline feature-cache pipeline: stage 1 caches the teacher's view features, stage 2 trains
the 3D masked autoencoder from the cache, stage 3 evaluates it."""

__version__ = "0.1.0"
