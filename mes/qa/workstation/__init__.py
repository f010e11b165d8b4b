"""The QA workstation pages of issue 19 (lists, batch review, signatures, charts), routes of the ``qa`` blueprint."""
