"""Build stage: the pinned source, the patch series, CMake, the manifest, the backend self-test and the serving gate."""
