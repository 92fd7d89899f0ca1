"""The manager: reconciles aspired versions with loaded ones."""
