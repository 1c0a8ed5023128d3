"""Adapters to other frameworks, each behind its optional extra: ``qvec.integrations.langchain``
(``pip install "qvec[langchain]"``)."""
