"""FedKSeed on Flower (flwr 1.42, Message API): a ServerApp with the kit's strategy, a ClientApp with
its own model replica that syncs by replaying the downlinks it missed. See `kit/deploy/app/`."""
