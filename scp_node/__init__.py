"""The DICOM node: receives studies by C-STORE or STOW-RS, decides when they have arrived, has
them analysed (classifier) and delivers the results; storage keeps the instances and the index.

A study's path, by folder and file:

    PACS --C-STORE--> dicom/          the wire: SOP classes, DIMSE statuses, header scan,
                                      connection guard, TLS, Storage Commitment, and
                                      pynetdicom_adapter/ (the one place that touches
                                      pynetdicom's internals; installed by one call)
                      receive/        receiver (the C-STORE SCP), intake (check, commit, index
                                      one instance: both doors), lazy_index, completion (when a
                                      study has arrived), processes (several receivers)
                      pipeline/       scheduler (ticks) -> worker (analyse one study) ->
                                      sender / dicomweb_sender (outbox -> PACS); routing,
                                      analysis_pool, priority, retention, source_check
                      ops/            audit, health, switches (the console's pause switches)
                      web/            the console, /metrics, STOW-RS intake
                      app/            cli, service (`lungnode serve`), check_config, selftest

Beside them, used by all: config, credentials, logs, metrics.

Imports point one way: app -> web -> pipeline -> receive -> ops -> dicom -> the shared
modules; never back up, never in a cycle (tests/contracts/test_architecture.py). `scp_node` uses
`storage` and `classifier`; they never import it.
"""
