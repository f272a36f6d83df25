"""CarVault: owners' access to their vehicle's data, signed by the car, logged, kept in its region."""

__version__ = "0.1.0"
