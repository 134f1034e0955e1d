"""Stream: the embedded broker and topic admin, and (later) the Faust worker and its pure cores."""
