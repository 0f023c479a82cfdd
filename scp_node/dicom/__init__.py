"""The DICOM wire: SOP classes, DIMSE statuses, reading a header from the first bytes, guarding
connections, TLS, the Storage Commitment service, and pynetdicom adapted to the node
(pynetdicom_adapter). Imports nothing above it in scp_node."""
