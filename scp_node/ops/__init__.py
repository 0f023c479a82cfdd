"""Operations: the audit trail, health (/livez, /readyz) and the console's pause switches."""
