"""The playground: a local web page that runs queries and shows every decoding step (`lmql-lite playground`)."""
