"""Uploaded files, in one place: receiving a stream (``uploads``), checking its content per purpose
(``checks``), storing, listing and deleting (``service``), and the file ids a job spec names (``refs``)."""
