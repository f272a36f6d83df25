"""Geography for the portal: GCJ-02 display coordinates and an offline reverse geocoder."""
