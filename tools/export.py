"""Export a detector to ONNX / TensorRT: see `pc3d.cli.export`."""
import sys

from pc3d.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
