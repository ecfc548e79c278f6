"""The serving core every service shares: model artifacts, input contracts, errors, settings,
logging and the HTTP plumbing that maps errors to the wire."""
