"""Traffic control on the data path (issue 15): statement mirroring to a shadow node and query analytics."""
