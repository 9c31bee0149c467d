"""What is kept on disk: model folders, bundles, the live catalogue, snapshots, Milvus."""
